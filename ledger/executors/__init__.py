"""Where planned runs execute: locally, N at a time in worker processes (`--jobs`), or as Ray tasks; one
`WorkerPool` interface."""
