"""Data path: collections → candidates → samplers → teacher scores → batches.

Every stage that costs real time (tokenization, BM25, dense embeddings, teacher scores) is
computed once, stored under the shared cache keyed by a hash of what determines it, and reused
by every later trial.
"""
