"""InstantBooth (Shi, Xiong, Lin, Jung, arXiv 2304.03411): personalisation without test-time
fine-tuning. A concept token from a trainable head on a frozen CLIP image encoder replaces the
identifier's text embedding; gated adapters in every UNet transformer block attend to the
photos' patch tokens. See docs/instantbooth.md for the method and our implementation choices.

Modules: ``config`` (config.json), ``encoders`` (CLIP side), ``adapters`` (gated self-attention
and its UNet hooks), ``prompts`` (identifier and concept token), ``model`` (the trainable parts,
save/load), ``conditioning`` (a render batch's inputs), ``personalizer`` (the engine plug-in),
``dataset``/``trainer``/``validation``/``frozen`` (training).
"""
