"""Several processes of one server (docs/architecture.md, "Past one process"; docs/adr/).

`topology` says which instance does what, `bus` carries changes between them (Redis),
`rpc` forwards a write to the instance that owns it.
"""
