"""Evaluation tasks: each turns its documents into backend requests and scores the answers."""
