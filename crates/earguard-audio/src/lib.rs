//! earguard-audio: audio decoding, resampling, Whisper log-mel features, perturbations and offline speech.
