"""Model files shipped with the package (each <= 10 MB, with a model card in docs/)."""
