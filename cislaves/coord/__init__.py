"""Scale-out through ZooKeeper (kazoo), as Zuul and Nodepool coordinate: the listener's leader
election and stored stream position (election), the build queue whose items a worker locks with an
ephemeral node while it runs them, with results and states every host reads (builds), cross-host
locks (locks) and the `worker` process (worker). Used only with `ci.backend: zookeeper` and a
`zookeeper:` section; without them nothing here is imported.
"""
