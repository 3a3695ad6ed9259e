"""Community-pipeline entry point for :class:`fastsample.pipelines.RectifiedFlowPipeline`.

``DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/rectified_flow.py", trust_remote_code=True)``.
"""

from fastsample.pipelines.rectified_flow import RectifiedFlowPipeline  # noqa: F401
