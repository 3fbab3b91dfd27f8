"""Step 4: the LightningModule, stage plans and run state, callbacks, precision choice, and the runner."""
