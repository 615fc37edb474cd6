"""avatarbot's research code, apart from the runtime (bot, engine, db): ``toyworld`` (a
synthetic world with exact identity metrics), ``evaluation`` (the personalizer x strength x
prompt x seed grid and its scores), ``instantbooth`` (InstantBooth's dataset, trainer and
validation renders) and ``cli`` (the bodies of `avatarbot eval` and `avatarbot train`).

It may import the runtime; the runtime never imports it (tests/test_layering.py).
"""
