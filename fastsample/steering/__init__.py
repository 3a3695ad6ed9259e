"""Hooks and tools around one sampling run: FlowChef steering (:mod:`.flowchef`), the straightness meter and
reflow pairs (:mod:`.flow_tools`). Above the solvers, below the schedulers and pipelines that use them.
"""
