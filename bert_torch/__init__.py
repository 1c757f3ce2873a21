"""A PyTorch BERT that matches Google's official TensorFlow graph, tap for tap. No TensorFlow here."""
from .modeling import (BertConfig, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                       BertModel)
from .taps import Taps, tap_names

__all__ = ["BertConfig", "BertModel", "BertForSequenceClassification", "BertForQuestionAnswering",
           "BertForPreTraining", "Taps", "tap_names"]
