"""Feature unlearning (Warnecke et al., NDSS 2023): first- and second-order (LiSSA) updates of a trained
classifier to revised or removed training samples, and the checks that compare it with retraining."""
