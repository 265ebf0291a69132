"""The ordering model: one small seq2seq trained on a run's hierarchies in both directions."""
