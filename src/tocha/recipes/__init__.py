"""Recipes: plain functions that run a whole job (train, evaluate, predict) from small pieces."""
