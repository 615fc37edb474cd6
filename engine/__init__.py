"""The image engine: models, personalizers, subject checks, the GPU worker. No discord, no db."""
