"""Where work runs: the embedded LocalCluster (default) or an existing Dask scheduler.

`connect` hands back a `distributed.Client` either way; nothing else in slidemill knows which.
"""

from cluster._connect import ClusterSettings, connect, gpu_workers

__all__ = ["ClusterSettings", "connect", "gpu_workers"]
