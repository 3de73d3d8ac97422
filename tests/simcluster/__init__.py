"""The simulated GPU cluster used by integration/e2e tests and `make demo`.

`python -m tests.simcluster up|down|fault|status ...`; Python: `from tests.simcluster.cluster import
SimCluster, procs_of`. Kept import-free so that `python -m tests.simcluster.hub` starts fast.
"""


def __getattr__(name):
    if name in ("SimCluster", "procs_of", "SimClusterError"):
        from tests.simcluster import cluster

        return getattr(cluster, name)
    raise AttributeError(name)
