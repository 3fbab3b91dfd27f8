"""Blocks families share: the LDM conv/attention blocks, the PatchGAN discriminator, frozen foundation teachers."""
