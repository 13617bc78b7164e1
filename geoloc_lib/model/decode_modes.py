"""The names of the decoding modes, in a module without torch so that command lines can offer them at once."""

DECODE_MODES = ("hierarchical", "joint", "mixture")  # see model/decoding.py
MODE_HELP = (
    "how the top provinces x top cells hypotheses become one place: 'joint' takes the most probable "
    "hypothesis (p(province) x p(cell | province)); 'hierarchical' the most probable province, then its most "
    "probable cell; 'mixture' the probability-weighted mean of all hypotheses (it can fall between cells). "
    "Default: the mode the run was trained with."
)
