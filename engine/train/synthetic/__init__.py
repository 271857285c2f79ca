"""Synthetic training data rendered on the fly: screens, documents, code, tables, receipts, charts.

Every generator takes a `random.Random` and returns pixels plus the ground truth text in reading
order, so a seed fixes a sample and held-out sets come from seeds the training run never uses.
"""
