"""The webcam feed: a camera source, a frame sampler, and a pane streaming frames to the state."""
