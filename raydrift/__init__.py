"""raydrift: continual learning on Ray.

Watch a PyTorch model on a data stream, detect concept drift, adapt the model with a continual-learning
update run by Ray Train, and hot-swap the new weights on every monitor.
"""

from raydrift.harness import Batch, Harness

__version__ = "0.1.0"
__all__ = ["Batch", "Harness", "__version__"]
