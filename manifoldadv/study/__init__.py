"""The paper's study: the resumable run directory (`study`), the whole run (`reproduce`), Table 2
and its rendering (`tables`), the report (`report`) and the paper's own numbers (`paper`)."""

from .study import ALL_MODES, AUTOATTACK_ROWS, CHECKED, TABLE1_COLS, TABLE1_ROWS, Study  # noqa: F401
