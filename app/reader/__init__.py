"""The long-document reader: open a PDF or images, show pages, stream them into the state."""
