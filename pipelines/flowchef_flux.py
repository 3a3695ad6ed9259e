"""Community-pipeline entry point for FlowChef-steered Flux (Patel et al., arXiv 2412.00100).

``DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/flowchef_flux.py", trust_remote_code=True)``;
then ``pipe(prompt, flowchef=pipe.make_flowchef("edit", image, mask=mask))``.
"""

from fastsample.pipelines.flowchef import FlowChefFluxPipeline  # noqa: F401
