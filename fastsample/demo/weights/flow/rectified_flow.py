from fastsample.pipelines.rectified_flow import RectifiedFlowPipeline  # noqa: F401
