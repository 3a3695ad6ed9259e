"""Community-pipeline entry point for FlowChef-steered SD3 (Patel et al., arXiv 2412.00100).

``DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/flowchef_sd3.py", trust_remote_code=True)``;
then ``pipe(prompt, flowchef=pipe.make_flowchef("inpainting", image, mask=mask))``.
"""

from fastsample.pipelines.flowchef import FlowChefStableDiffusion3Pipeline  # noqa: F401
