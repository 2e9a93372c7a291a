"""KDEP (He et al., CVPR 2022): feature distillation with SVD-aligned teacher features as efficient
pre-training, then fine-tuning."""
