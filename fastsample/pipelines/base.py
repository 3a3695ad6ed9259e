"""What a pipeline class outside Diffusers needs so that its saved folders load like Diffusers' own.

``DiffusionPipeline.from_pretrained`` finds a pipeline class by the name in model_index.json, in
the ``diffusers`` module only; a class from another package is found only through a module file
inside the folder named as ``[module, class]``, as community pipelines on the Hub are shipped.
:class:`FolderCodeMixin` writes that one-line file on ``save_pretrained`` and names it, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (Diffusers' rule for code
in a folder) returns the fastsample class; loading through the class itself ignores the file.
"""

from __future__ import annotations

import json
import os

__all__ = ["FolderCodeMixin"]


class FolderCodeMixin:
    """Mixin for :class:`diffusers.DiffusionPipeline` subclasses shipped by fastsample."""

    @classmethod
    def _code_file(cls) -> str:
        return cls.__module__.rsplit(".", 1)[-1]

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        config["_class_name"] = [self._code_file(), type(self).__name__]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, self._code_file() + ".py"), "w") as f:
            f.write(f"from {type(self).__module__} import {type(self).__name__}  # noqa: F401\n")
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """As Diffusers' ``load_config``; a folder naming this class through its module file names it directly."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        name = config.get("_class_name")
        if isinstance(name, list) and name[-1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return out
