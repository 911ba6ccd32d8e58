"""Cloud deployment of the project: Dataflow Flex Templates and the Vertex AI trainer launcher.

Used from a workstation or CI only; the Beam workers and the trainer never import it.
"""
