"""Algorithms on models: which layers to factorize, decompose, the TRP training hook, rank
selection, measured sensitivity and rank alignment."""
