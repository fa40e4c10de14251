"""Datamodules: each registers itself by name and yields :class:`vlp.batch.Batch` batches."""
