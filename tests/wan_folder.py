"""A tiny synthetic Wan checkpoint folder, laid out as a user assembles the upstream
downloads (model/wan/folder.py), with random weights at tiny sizes: the DiT in
Self-Forcing's layout (`self_forcing_dmd.pt`, {generator_ema: {model.*}}), the Wan VAE
(`Wan2.1_VAE.pth`, Wan's names), the tiny decoder (`taew2_1.pth`, TAEHV's names), umT5
(`text_encoder/`, transformers) with a sentencepiece tokenizer trained here
(`tokenizer/`), and `livereel.json`. Everything a real folder has, so that `livereel
serve --checkpoint FOLDER` runs the whole Wan path on a CPU in seconds.

    python -m tests.wan_folder OUT    # makes one
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SENTENCES = ["a red fox runs across the snowy field at dawn", "the camera pans over a quiet harbour with boats",
             "a cat sleeps on a warm windowsill", "waves crash against dark rocks under a grey sky",
             "a blue cube drifting over the desert at night", "a white star above the city, snowing"]
SETTINGS = {"recipe": "longlive", "height": 48, "width": 80, "heads": 2}  # non-square: 3 x 5 tokens a frame


def _tokenizer(out: Path) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    work = out.parent / ".spm"
    work.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 10), model_prefix=str(work / "spiece"),
                                   vocab_size=120, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(work / "spiece.model"))
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)
    tok.save_pretrained(out)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


def make_wan_folder(root: str | Path, seed: int = 0) -> Path:
    """Write the folder (created if needed) and return it."""
    from transformers import UMT5EncoderModel

    from model.wan.config import WanConfig
    from model.wan.dit import WanDiT
    from model.wan.loader import ROPE_PERMUTED
    from model.wan.rope import from_half_split
    from model.wan.tae import PRESETS as TAE_PRESETS
    from model.wan.tae import TAEDecoder, published_names
    from model.wan.text import TextConfig
    from model.wan.vae import PRESETS as VAE_PRESETS
    from model.wan.vae import WanVAEDecoder

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text = TextConfig(vocab=120, dim=32, ffn_dim=64, layers=2, heads=4, head_dim=8)
    cfg = WanConfig(dim=32, ffn_dim=64, depth=2, heads=SETTINGS["heads"], in_channels=16, out_channels=16,
                    freq_dim=32, text_dim=text.dim)
    dit = WanDiT(cfg)
    with torch.no_grad():  # a prompt that shows: the text's path stronger than at init
        for block in dit.blocks:
            block.cross_attn.o.weight.mul_(8.0)
    wan_named = {k: from_half_split(v, cfg.heads) if k.split(".", 2)[-1] in ROPE_PERMUTED else v
                 for k, v in dit.state_dict().items()}  # as upstream stores it: Wan's channel order
    torch.save({"generator_ema": {f"model.{k}": v for k, v in wan_named.items()}}, root / "self_forcing_dmd.pt")
    torch.save(WanVAEDecoder(VAE_PRESETS["debug"]).state_dict(), root / "Wan2.1_VAE.pth")
    tae_cfg = TAE_PRESETS["debug"]
    names = published_names(tae_cfg)
    torch.save({names[k]: v for k, v in TAEDecoder(tae_cfg).state_dict().items()}, root / "taew2_1.pth")
    UMT5EncoderModel(text.hf()).save_pretrained(root / "text_encoder")
    _tokenizer(root / "tokenizer")
    (root / "livereel.json").write_text(json.dumps(SETTINGS, indent=2) + "\n")
    return root


if __name__ == "__main__":
    print(make_wan_folder(sys.argv[1] if len(sys.argv) > 1 else "tiny-wan"))
