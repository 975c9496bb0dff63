"""Cloud backends: the cloud wrapper API and the clients that implement it."""
