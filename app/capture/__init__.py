"""Screen capture: the global hotkey, the frozen-screen region picker and the OCR of a region."""
