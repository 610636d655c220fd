//! `earguard bench decode`: our decoder (empty plan, and steered at every layer) against
//! candle-transformers' stock quantized model on the same GGUF, in one process.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::{HookKind, InterventionPlan, Logits, Model, Positions, Prompt};
use serde_json::json;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode and prefill tokens/s: ours (empty plan), ours steered, candle's stock model.
    #[command(after_long_help = crate::DEFENSE_SPECS)]
    Decode(DecodeArgs),
    /// Responses/s of batched generation (batch 1 vs batch N) on the same prompts.
    Eval(EvalBenchArgs),
    /// Log-mel throughput (× real time) and our Whisper encoder vs candle's stock encoder.
    Audio(crate::bench_audio::AudioBenchArgs),
}

#[derive(Args)]
pub struct EvalBenchArgs {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Prompt set whose first prompts are used.
    #[arg(long, default_value = "../shared/data/advbench_mirror.jsonl")]
    pub data: std::path::PathBuf,
    /// Number of prompts (and the large batch size).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per response.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub adapter: crate::args::AdapterArg,
}

#[derive(Args)]
pub struct DecodeArgs {
    /// A GGUF model (path or short name); the stock baseline reads the same file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Tokens decoded per measurement.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Measurements per variant (the best is reported; variants are interleaved).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also time these defenses (specs as in `eval --defense`, e.g. sarsteer=DIR, cast=DIR).
    #[arg(long = "defense")]
    pub defenses: Vec<String>,
    /// Also time the model with this LoRA adapter (PEFT directory) attached: row "adapter".
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(args) => decode(args),
        BenchCommand::Eval(args) => eval_batching(args),
        BenchCommand::Audio(args) => crate::bench_audio::audio(args),
    }
}

/// The widest SIMD extension this CPU offers the matmul kernels ("avx512f", "avx2", "neon" or
/// "none"): timings differ between machines, so every benchmark says which it ran on.
pub fn cpu_simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return "neon";
    }
    #[allow(unreachable_code)]
    "none"
}

/// Seconds for prefill and for decoding, for one variant.
#[derive(Clone, Copy)]
struct Timing {
    prefill_s: f64,
    decode_s: f64,
    /// Tokens decoded in `decode_s` (the requested count, except for SafeCoDe: see [`Guided`]).
    decoded: usize,
    /// SafeCoDe's decoding split at the end of its guided steps.
    split: Option<Split>,
}

/// Decoding time during a contrastive defense's guided steps (the companion rows decoded
/// beside the prompt) and after them, with the tokens each covers.
#[derive(Clone, Copy)]
struct Split {
    guided_s: f64,
    guided_n: usize,
    after_s: f64,
    after_n: usize,
}

impl Split {
    /// Seconds per token during the guided steps and after them.
    fn per_token(&self) -> (f64, f64) {
        (
            self.guided_s / self.guided_n.max(1) as f64,
            self.after_s / self.after_n.max(1) as f64,
        )
    }
}

impl Timing {
    /// Decoding seconds per token.
    fn per_token(&self) -> f64 {
        self.decode_s / self.decoded.max(1) as f64
    }
}

trait Runner {
    /// Prefill `prompt`, then decode `n` tokens greedily; returns the timing.
    fn run(&mut self, prompt: &[u32], n: usize) -> Result<Timing>;
}

struct Ours<'a> {
    model: &'a Model,
    plan: InterventionPlan,
}

impl Runner for Ours<'_> {
    fn run(&mut self, prompt: &[u32], n: usize) -> Result<Timing> {
        let dec = &self.model.decoder;
        let mut cache = dec.new_cache(vec![0]);
        let ids = Tensor::new(prompt, dec.device())?.unsqueeze(0)?;
        let t0 = Instant::now();
        let mut logits = dec
            .forward(&ids, &mut cache, &self.plan, Logits::Last)?
            .logits;
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..n {
            let l = logits.take().context("no logits")?;
            let next = l.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
            let ids = Tensor::new(&[[next]], dec.device())?;
            logits = dec
                .forward(&ids, &mut cache, &self.plan, Logits::Last)?
                .logits;
        }
        Ok(Timing {
            prefill_s,
            decode_s: t1.elapsed().as_secs_f64(),
            decoded: n,
            split: None,
        })
    }
}

/// SafeCoDe's generation on the prompt's text sent as one user message (templated, so a few
/// tokens longer than the others' raw prompt). "Prefill" is the time to its first answer token:
/// the verdict, the prompt and its companion's prefill and the first guided step.
struct Guided<'a> {
    model: &'a Model,
    defense: Box<dyn earguard_steer::defense::Defense>,
    plan: InterventionPlan,
}

impl Runner for Guided<'_> {
    fn run(&mut self, prompt: &[u32], n: usize) -> Result<Timing> {
        use earguard_model::chat::{ChatMessage, ContentSpecials};
        use earguard_model::generate::GenerateRequest;
        let sc = self
            .defense
            .safecode()
            .context("a guided runner needs SafeCoDe")?;
        let text = self.model.tokenizer.decode(prompt, true)?;
        let request = vec![ChatMessage::user(&text)];
        let messages = self.defense.rewrite(request.clone());
        let audio = earguard_model::AudioCache::new();
        let encoded = self
            .model
            .encode_prompt(&messages, ContentSpecials::Literal, &audio)?;
        let input = earguard_steer::defense::safecode::GuidedInput {
            request: &request,
            messages: &messages,
            prompt: &encoded,
            seed: 0,
        };
        // No stop token: exactly n tokens, as the other runners decode.
        let generate = GenerateRequest::greedy(n, &[], self.model.tokenizer.pad_id());
        let t0 = Instant::now();
        // When each answer token arrived.
        let mut stamps: Vec<f64> = Vec::with_capacity(n);
        sc.generate(
            self.model,
            std::slice::from_ref(&input),
            ContentSpecials::Literal,
            &self.plan,
            &generate,
            &audio,
            |_, _| stamps.push(t0.elapsed().as_secs_f64()),
        )?;
        let total = t0.elapsed().as_secs_f64();
        let count = stamps.len();
        let prefill_s = stamps.first().copied().unwrap_or(total);
        // The first token came inside "prefill"; a verdict may also cap the answer below n.
        if count < 2 {
            bail!(
                "SafeCoDe answered in {count} token(s): too few to time its decoding (raise \
                 --tokens, or its verdict capped the answer)"
            );
        }
        // Token i (i ≥ 1) took stamps[i] − stamps[i − 1]; it came from a forward with the
        // companion rows while i < steps (the reference variant may release a row sooner: its
        // "guided" figure then mixes in plain steps). With one step, or an answer that ends
        // within the steps, one side has no token and there is no split.
        let end = sc.steps;
        let split = (2..count).contains(&end).then(|| Split {
            guided_s: stamps[end - 1] - stamps[0],
            guided_n: end - 1,
            after_s: stamps[count - 1] - stamps[end - 1],
            after_n: count - end,
        });
        Ok(Timing {
            prefill_s,
            decode_s: total - prefill_s,
            decoded: count - 1,
            split,
        })
    }
}

enum StockModel {
    Qwen2(candle_transformers::models::quantized_qwen2::ModelWeights),
    Llama(candle_transformers::models::quantized_llama::ModelWeights),
}

impl StockModel {
    fn forward(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
        Ok(match self {
            StockModel::Qwen2(m) => m.forward(x, pos)?,
            StockModel::Llama(m) => m.forward(x, pos)?,
        })
    }
}

struct Stock {
    path: std::path::PathBuf,
    arch: &'static str,
    /// The device ours runs on, so both run on the same one.
    device: Device,
}

impl Stock {
    fn load(&self) -> Result<StockModel> {
        let mut f = std::fs::File::open(&self.path)?;
        let ct = candle_core::quantized::gguf_file::Content::read(&mut f)?;
        Ok(match self.arch {
            "qwen2" => StockModel::Qwen2(
                candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
                    ct,
                    &mut f,
                    &self.device,
                )?,
            ),
            _ => StockModel::Llama(
                candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                    ct,
                    &mut f,
                    &self.device,
                )?,
            ),
        })
    }
}

struct StockRunner(StockModel, Device);

impl Runner for StockRunner {
    fn run(&mut self, prompt: &[u32], n: usize) -> Result<Timing> {
        // The stock model keeps its KV cache inside; a fresh prefill at position 0 resets it.
        let ids = Tensor::new(prompt, &self.1)?.unsqueeze(0)?;
        let t0 = Instant::now();
        let mut logits = self.0.forward(&ids, 0)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for i in 0..n {
            let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
            let ids = Tensor::new(&[[next]], &self.1)?;
            logits = self.0.forward(&ids, prompt.len() + i)?;
        }
        Ok(Timing {
            prefill_s,
            decode_s: t1.elapsed().as_secs_f64(),
            decoded: n,
            split: None,
        })
    }
}

fn decode(args: DecodeArgs) -> Result<()> {
    let model = crate::args::load_model(&args.model, args.json)?;
    if model.info.format != "gguf" {
        bail!("bench decode compares against candle's stock quantized models: give a GGUF model");
    }
    let cfg = model.decoder.config().clone();
    // A fixed, ordinary prompt repeated to the requested length.
    let seed_text =
        "The quick brown fox jumps over the lazy dog while the sun sets behind the hills. ";
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(model.tokenizer.encode(seed_text, false)?);
    }
    prompt.truncate(args.prompt_tokens.max(1));
    if prompt.len() + args.tokens + 1 > cfg.context_length {
        bail!(
            "prompt + tokens exceed the model's context of {}",
            cfg.context_length
        );
    }

    // Steering as SARSteer applies it: a small vector added at the last position of every layer.
    let mut steer = InterventionPlan::new();
    for l in 0..cfg.n_layers {
        let v = (Tensor::randn(0f32, 1.0, cfg.hidden_size, &Device::Cpu)? * 0.01)?;
        steer = steer.add(HookKind::ResidPost.at(l), Positions::Last, v);
    }
    let stock = Stock {
        path: model.info.path.clone(),
        arch: model.info.architecture,
        device: model.decoder.device().clone(),
    };
    let stock_model = stock.load().context("loading candle's stock model")?;
    let adapted = match &args.adapter {
        Some(dir) => {
            let mut m = crate::args::load_model(&args.model, true)?;
            crate::args::AdapterArg {
                adapter: Some(dir.clone()),
            }
            .apply(&mut m)?;
            Some(m)
        }
        None => None,
    };
    let mut runners: Vec<(String, Box<dyn Runner + '_>)> = vec![
        (
            "ours".into(),
            Box::new(Ours {
                model: &model,
                plan: InterventionPlan::new(),
            }),
        ),
        (
            "steered".into(),
            Box::new(Ours {
                model: &model,
                plan: steer,
            }),
        ),
        (
            "stock".into(),
            Box::new(StockRunner(stock_model, model.decoder.device().clone())),
        ),
    ];
    if let Some(m) = &adapted {
        runners.push((
            "adapter".into(),
            Box::new(Ours {
                model: m,
                plan: InterventionPlan::new(),
            }),
        ));
    }
    for spec in &args.defenses {
        let parsed: earguard_steer::defense::DefenseSpec = spec.parse()?;
        let defense = earguard_steer::defense::build(&parsed, &model, false)?;
        // CAST's condition is a gate inside the timed forward passes, not a separate probe.
        let plan = defense.plan()?;
        if defense.safecode().is_some() {
            // SafeCoDe decodes differently: its verdict, a corrupted companion prefilled beside
            // the prompt, guided steps. Timed whole, on the prompt as a chat message.
            runners.push((
                spec.clone(),
                Box::new(Guided {
                    model: &model,
                    defense,
                    plan,
                }),
            ));
            continue;
        }
        runners.push((
            spec.clone(),
            Box::new(Ours {
                model: &model,
                plan,
            }),
        ));
    }
    let mut best: Vec<Option<Timing>> = vec![None; runners.len()];
    // Warm-up (page in weights, allocator), then interleaved repeats.
    for (_, r) in runners.iter_mut() {
        r.run(&prompt[..prompt.len().min(8)], 2)?;
    }
    let progress = indicatif::ProgressBar::new((args.repeats * runners.len()) as u64);
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for _ in 0..args.repeats.max(1) {
        for (i, (name, r)) in runners.iter_mut().enumerate() {
            progress.set_message(name.to_string());
            let t = r.run(&prompt, args.tokens)?;
            best[i] = Some(match best[i] {
                None => t,
                Some(b) => Timing {
                    prefill_s: b.prefill_s.min(t.prefill_s),
                    ..if t.per_token() < b.per_token() { t } else { b }
                },
            });
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let tok_s = |n: usize, s: f64| n as f64 / s.max(1e-12);
    // Decoding compared per token (SafeCoDe's runs decode fewer tokens in their timed part).
    let dec_tok_s = |t: &Timing| 1.0 / t.per_token().max(1e-12);
    let best: Vec<Timing> = best
        .into_iter()
        .map(|t| t.context("variant was not measured"))
        .collect::<Result<_>>()?;
    let (ours, steered, stock) = (best[0], best[1], best[2]);
    let defenses: Vec<serde_json::Value> = runners[3..]
        .iter()
        .zip(&best[3..])
        .map(|((name, _), t)| {
            let split = t.split.map(|s| s.per_token());
            json!({"defense": name, "decode_tok_s": dec_tok_s(t),
                "time_vs_no_defense": t.per_token() / ours.per_token(),
                "prefill_vs_no_defense": t.prefill_s / ours.prefill_s,
                "total_vs_no_defense": (t.prefill_s + t.decode_s) / (ours.prefill_s + ours.decode_s),
                "guided_step_vs_no_defense": split.map(|(g, _)| g / ours.per_token()),
                "after_guided_vs_no_defense": split.map(|(_, a)| a / ours.per_token())})
        })
        .collect();
    let report = json!({
        "model": model.info.name,
        "threads": candle_core::utils::get_num_threads(),
        "cpu_simd": cpu_simd(),
        "prompt_tokens": prompt.len(),
        "decode_tokens": args.tokens,
        "ours_decode_tok_s": dec_tok_s(&ours),
        "steered_decode_tok_s": dec_tok_s(&steered),
        "stock_decode_tok_s": dec_tok_s(&stock),
        "ours_prefill_tok_s": tok_s(prompt.len(), ours.prefill_s),
        "steered_prefill_tok_s": tok_s(prompt.len(), steered.prefill_s),
        "stock_prefill_tok_s": tok_s(prompt.len(), stock.prefill_s),
        "ours_over_stock_decode": stock.decode_s / ours.decode_s,
        "ours_over_stock_prefill": stock.prefill_s / ours.prefill_s,
        "steered_over_unsteered_time": steered.decode_s / ours.decode_s,
        "defenses": defenses,
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "model {} ({} threads, {})",
        model.info.name,
        candle_core::utils::get_num_threads(),
        cpu_simd()
    );
    println!(
        "{:<10} {:>14} {:>15}",
        "variant", "decode tok/s", "prefill tok/s"
    );
    for (name, t) in [("ours", ours), ("steered", steered), ("stock", stock)] {
        println!(
            "{name:<10} {:>14.2} {:>15.1}",
            dec_tok_s(&t),
            tok_s(prompt.len(), t.prefill_s)
        );
    }
    for ((name, _), t) in runners[3..].iter().zip(&best[3..]) {
        println!(
            "defense {name}: decode {:.2} tok/s; time vs no defense: decode {:.3}, prefill {:.3}, \
             total {:.3}",
            dec_tok_s(t),
            t.per_token() / ours.per_token(),
            t.prefill_s / ours.prefill_s,
            (t.prefill_s + t.decode_s) / (ours.prefill_s + ours.decode_s)
        );
        if let Some((g, a)) = t.split.map(|s| s.per_token()) {
            println!(
                "  per token vs no defense: {:.3} during the guided steps, {:.3} after them",
                g / ours.per_token(),
                a / ours.per_token()
            );
        }
    }
    println!(
        "ours/stock speed: decode {:.3}×, prefill {:.3}×   steered/unsteered decode time: {:.3}",
        stock.decode_s / ours.decode_s,
        stock.prefill_s / ours.prefill_s,
        steered.decode_s / ours.decode_s
    );
    Ok(())
}

/// Responses/s at batch 1 and at batch N on the same prompts, greedy, no early stop.
fn eval_batching(args: EvalBenchArgs) -> Result<()> {
    use earguard_model::generate::{generate_batch, GenerateRequest};
    let set = earguard_data::PromptSet::read(&args.data, &Default::default())?;
    let mut model = crate::args::load_model(&args.model, args.json)?;
    args.adapter.apply(&mut model)?;
    let prompts: Vec<Prompt> = set
        .items
        .iter()
        .take(args.batch.max(1))
        .map(|i| model.encode_chat(None, &i.text).map(Prompt::text))
        .collect::<Result<_, _>>()?;
    // No stop tokens: every response has exactly max_tokens, so both runs do the same work.
    let request = GenerateRequest::greedy(args.max_tokens, &[], model.tokenizer.pad_id());
    let plan = InterventionPlan::new();
    let t0 = Instant::now();
    for p in &prompts {
        generate_batch(
            &model.decoder,
            std::slice::from_ref(p),
            &request,
            &plan,
            None,
            |_, _| {},
        )?;
    }
    let single = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    generate_batch(&model.decoder, &prompts, &request, &plan, None, |_, _| {})?;
    let batched = t1.elapsed().as_secs_f64();
    let n = prompts.len() as f64;
    let report = json!({
        "model": model.info.name,
        "prompts": prompts.len(),
        "max_tokens": args.max_tokens,
        "batch1_responses_s": n / single,
        "batched_responses_s": n / batched,
        "speedup": single / batched,
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} prompts × {} tokens: batch 1 {:.3} responses/s, batch {} {:.3} responses/s, speed-up {:.2}×",
            prompts.len(),
            args.max_tokens,
            n / single,
            prompts.len(),
            n / batched,
            single / batched
        );
    }
    Ok(())
}
