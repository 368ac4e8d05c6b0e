"""Models by name: custom CNNs and torchvision backbones, all keeping the Classifier contract."""

from imgclf.models import cnn, zoo  # noqa: F401  (registers the models)
from imgclf.models.base import Classifier, InputSpec
from imgclf.models.registry import create_model, list_models, model_entry, model_options, register_model
from imgclf.models.summary import Summary, summarize
from imgclf.models.weights import read_state_dict

__all__ = ["Classifier", "InputSpec", "Summary", "create_model", "list_models", "model_entry", "model_options",
           "read_state_dict", "register_model", "summarize"]
