"""Models and training: TP-SwAV pretraining, MoE multi-task fine-tuning (issue: models and training)."""
