"""Evaluation tasks: each turns its documents into engine requests and scores the answers."""
