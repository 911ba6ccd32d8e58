"""Vertex AI custom training: the GPU trainer image and `python -m infra.vertex.launch`."""
