"""Allowed values and defaults of the loss options (torch-free, for config validation)."""

# The paper's threshold gamma of Eq 12 (Sec. VII-B); the run config and the study default to it.
DEFAULT_GAMMA = 1e-3
COMPETITION_FORMS = ("paper", "code")  # L_C as Eq 12, or as the authors' code
FDRT_NORMS = ("l1", "fro")  # Eq 3 as written, or the Frobenius norm of the text and the code
