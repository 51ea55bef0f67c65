"""The paper's study: the resumable run directory (`study`), the whole run (`reproduce`), the
report (`report`) and the paper's own numbers (`paper`)."""

from .study import (ALL_MODES, AUDIT_EXAMPLES, AUTOATTACK_ROWS, LP_ATTACKS, LP_MODELS, TABLE1_COLS,  # noqa: F401
                    TABLE1_ROWS, Study)
