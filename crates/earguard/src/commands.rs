//! `inspect` and `generate`.

use crate::args::{load_model, SpecialsArg};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use earguard_data::{Label, Mode, PromptItem};
use earguard_model::chat::ChatMessage;
use earguard_model::generate::{generate_batch, GenerateRequest, SamplingParams};
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::tokenizer::TokenStream;
use earguard_model::AudioCache;
use earguard_steer::defense::{DefenseSpec, GuidedInput, Verdict};
use earguard_steer::inputs::InputStyle;
use serde_json::json;

#[derive(Args)]
pub struct InspectArgs {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The user's message (text-only mode), or the text instruction that goes with `--audio`
    /// (audio-text mode; default: SARSteer's "Please generate detailed steps for the question in
    /// the audio.").
    #[arg(long, short)]
    pub prompt: Option<String>,
    /// A spoken question (WAV, FLAC, MP3 or Ogg; any rate and channel count; at most 30 s),
    /// for an audio-language model (Qwen2-Audio).
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Input mode: text-only (the prompt as text), audio-text (speech + text instruction),
    /// audio-only (speech alone). Default: audio-text with --audio and --prompt, audio-only with
    /// --audio alone, text-only otherwise.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate (generation also stops at the template's end tokens).
    #[arg(long, default_value_t = 256, value_parser = crate::args::positive)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Keep only the k most likely tokens when sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Random seed (the same seed, model and prompt give the same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (text, n_tokens, finish_reason, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Defense spec: none, prompt[:variant=…], sarsteer=DIR, actadd=DIR, ablate=DIR, cast=DIR,
    /// or several joined with + (see `earguard eval --help`).
    #[arg(long, default_value = "none")]
    pub defense: String,
    /// Steering strength for sarsteer / text-steer / cast when the spec does not set alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Skip the model-identity check of steering vectors (sizes are always checked).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub tokens: SpecialsArg,
    #[command(flatten)]
    pub adapter: crate::args::AdapterArg,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let model = load_model(&args.model, args.json)?;
    let info = &model.info;
    if args.json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    let rows: [(&str, String); 14] = [
        ("name", info.name.clone()),
        ("path", info.path.display().to_string()),
        ("format", info.format.to_string()),
        ("architecture", info.architecture.to_string()),
        ("n_layers", info.n_layers.to_string()),
        ("hidden_size", info.hidden_size.to_string()),
        ("intermediate_size", info.intermediate_size.to_string()),
        (
            "heads (q / kv)",
            format!("{} / {}", info.n_heads, info.n_kv_heads),
        ),
        ("vocab_size", info.vocab_size.to_string()),
        ("context_length", info.context_length.to_string()),
        ("tied embeddings", info.tie_embeddings.to_string()),
        ("quantization", info.quantization.clone()),
        (
            "chat template",
            if info.chat_template { "yes" } else { "no" }.to_string(),
        ),
        ("identity", info.identity.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<18} {v}");
    }
    match (&info.audio_tower, &info.speech) {
        (Some(a), _) => println!(
            "{:<18} Whisper encoder, {} layers, d_model {}, {} mel bins",
            "audio tower", a.n_layers, a.d_model, a.n_mels
        ),
        (None, Some(s)) => {
            println!(
                "{:<18} speech model from parts: the LLM {}, the Whisper encoder of {} ({} layers, frozen), {}, posterior temperature {}",
                "audio",
                s.llm,
                s.whisper.display(),
                s.encoder_layers,
                s.listener,
                s.temperature
            );
        }
        (None, None) => println!("{:<18} none (text model)", "audio tower"),
    }
    Ok(())
}

/// The input mode `generate` runs in, and its conversation (before any defense rewrites it).
fn generate_messages(args: &GenerateArgs) -> Result<(Mode, Vec<ChatMessage>)> {
    let mode = args.mode.unwrap_or(match (&args.audio, &args.prompt) {
        (Some(_), Some(_)) => Mode::AudioText,
        (Some(_), None) => Mode::AudioOnly,
        (None, _) => Mode::TextOnly,
    });
    match (mode, &args.audio, &args.prompt) {
        (Mode::TextOnly, _, None) => bail!("text-only mode needs --prompt"),
        (Mode::TextOnly, Some(_), _) => {
            bail!("--audio is not used in text-only mode; pass --mode audio-text or audio-only")
        }
        (Mode::AudioText | Mode::AudioOnly, None, _) => bail!("{mode} mode needs --audio FILE"),
        (Mode::AudioOnly, _, Some(_)) => {
            bail!("audio-only mode sends the speech alone; drop --prompt or use --mode audio-text")
        }
        _ => {}
    }
    let mut style = InputStyle::new(mode);
    style.system = args.system.clone();
    if let (Mode::AudioText, Some(p)) = (mode, &args.prompt) {
        style.instruction = p.clone();
    }
    let item = PromptItem {
        id: "prompt".into(),
        source: None,
        split: None,
        label: Label::Benign,
        category: None,
        pair_id: None,
        text: args.prompt.clone().unwrap_or_default(),
        audio: args.audio.clone(),
        voice: None,
    };
    Ok((mode, style.messages(&item, None)?))
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let mut model = load_model(&args.model, args.json)?;
    args.adapter.apply(&mut model)?;
    let mut spec: DefenseSpec = args.defense.parse()?;
    if let Some(alpha) = args.alpha {
        spec.set_steering_alpha(alpha);
    }
    let defense = earguard_steer::defense::build(&spec, &model, args.force)?;
    let (mode, messages) = generate_messages(&args)?;
    let audio = AudioCache::new();
    let templated = defense.rewrite(messages.clone());
    let prompt = model.encode_prompt(&templated, args.tokens.specials(), &audio)?;
    let plan = defense.plan()?;
    let stop = model.tokenizer.stop_token_ids();
    let request = GenerateRequest {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_tokens: &stop,
        pad_token: model.tokenizer.pad_id(),
    };
    let t0 = Instant::now();
    let mut stream = TokenStream::new(&model.tokenizer);
    let mut stdout = std::io::stdout().lock();
    let mut stream_err = None;
    let on_token = |_, token| {
        if args.json {
            return;
        }
        match stream.push(token) {
            Ok(Some(piece)) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Ok(None) => {}
            Err(e) => stream_err = Some(e),
        }
    };
    let (out, safety) = match defense.safecode() {
        None => (
            generate_batch(
                &model.decoder,
                std::slice::from_ref(&prompt),
                &request,
                &plan,
                None,
                on_token,
            )
            .with_context(|| format!("generating with defense {spec}"))?,
            None,
        ),
        Some(sc) => {
            let input = GuidedInput {
                request: &messages,
                messages: &templated,
                prompt: &prompt,
                seed: args.seed,
            };
            let out = sc
                .generate(
                    &model,
                    std::slice::from_ref(&input),
                    args.tokens.specials(),
                    &plan,
                    &request,
                    &audio,
                    on_token,
                )
                .with_context(|| format!("generating with defense {spec}"))?;
            (out.generations, out.verdicts.into_iter().next())
        }
    };
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    let seconds = t0.elapsed().as_secs_f64();
    let generation = out.into_iter().next().context("no generation returned")?;
    let text = model.tokenizer.decode(&generation.tokens, true)?;
    if args.json {
        let value = json!({
            "model": model.info.name,
            "prompt": args.prompt,
            "audio": args.audio,
            "mode": mode,
            "defense": spec.to_string(),
            "text": text,
            "n_tokens": generation.tokens.len(),
            "n_prompt_tokens": prompt.len(),
            "finish_reason": generation.finish,
            "seconds": seconds,
            "safety_verdict": safety.map(|v| json!({
                "unsafe_request": v.verdict == Verdict::Unsafe,
                "score": v.score,
            })),
        });
        println!("{}", serde_json::to_string(&value)?);
    } else {
        if let Ok(Some(rest)) = stream.finish() {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
        if let Some(v) = safety {
            eprintln!(
                "[safecode verdict: {:?} (logit(unsafe) − logit(safe) = {:.2})]",
                v.verdict, v.score
            );
        }
        eprintln!(
            "[{} tokens in {:.1}s, {:.1} tok/s, finish: {:?}]",
            generation.tokens.len(),
            seconds,
            generation.tokens.len() as f64 / seconds.max(1e-9),
            generation.finish
        );
    }
    Ok(())
}
