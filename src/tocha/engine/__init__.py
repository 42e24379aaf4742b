"""The training engine: one loop for every task (loop.py), batches (batches.py), optimizers
(optim.py), checkpoints (checkpoint.py) and the process layout (distributed.py)."""
