"""Training InstantBooth (the personalizer itself lives in engine.personalizers.instantbooth):
``dataset`` (image-caption pairs, subject views, augmentation), ``trainer`` (the loop, its
checkpoints) and ``validation`` (fixed-seed renders during training)."""
