"""Stage 8, serve: a finished run answering photos over HTTP, on a page and in JupyterLab.

Owns the command line (`__main__`: `geoloc-serve`), the routes (`app`: the page, `POST /predict`, `/run`,
`/health`), the model behind them (`asker`: a request's photos decoded or refused, then placed together;
`batcher`: the photos of requests that wait together placed in one forward pass), the page
(`page`) and notebook 06's upload widget (`notebook_panel`). May import every stage below it.
"""
