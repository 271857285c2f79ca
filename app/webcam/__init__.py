"""The webcam feed: a camera source, a frame sampler, and a pane that streams frames to the state."""
