"""Serving in the cart: :class:`~skurec.serving.recognizer.Recognizer` (image -> SKUs or ``unknown``), the
calibrated unknown threshold, and the review queue of low-confidence photos. Framework-free."""
