"""The model library, no Ray and no HTTP: the engine interface, loading, the torch engine, clean-up.

    from serve.engine import Engine, Sampling
    engine = Engine()                                   # embedded SmolLM2 + shipped adapter if any
    engine.generate([[{"speaker": "Joey", "text": "How you doin'?"}]])[0].text
"""
from serve.engine.interface import Reply, Sampling
from serve.engine.loading import ModelLoadError, resolve_adapter
from serve.engine.torch_engine import TorchEngine as Engine

__all__ = ["Engine", "ModelLoadError", "Reply", "Sampling", "resolve_adapter"]
