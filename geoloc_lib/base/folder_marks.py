"""The files that make a folder a data folder or a run folder, named once for every stage: the data contract and
ingest write them (`data/`), the run folder reads them (`run/folder.py`), and the output check refuses to
write inside either (`base/output_files.py`)."""

TRAIN_CSV, TEST_CSV, CELLS_CSV = "train.csv", "test.csv", "cell_metadata.csv"
CONFIG_JSON, RUN_INFO_JSON = "config.json", "run_info.json"

DATA_FOLDER_MARKS = (TRAIN_CSV, CELLS_CSV)
RUN_FOLDER_MARKS = (CONFIG_JSON, RUN_INFO_JSON)
