//! Times NMS (4,000 and 20,000 boxes), multi-scale RoIAlign (1,000 boxes, 256 channels, FPN
//! levels of an 800×1088 image) and mask pasting (100 masks into 800×1066), then, when
//! torchvision can be imported, the same calls in torchvision on the same data in the same
//! run, and prints the ratios mrc/torchvision.
//!
//! `cargo bench -p mrc-runtime --bench ops`; the Python interpreter is `$MRC_TORCH_PYTHON`
//! (default `python3`); `MRC_BENCH_RUNS` sets the number of timed runs (default 7).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mrc_runtime::ops::multiscale::{multiscale_roi_align, MultiScaleParams};
use mrc_runtime::ops::nms::nms;
use mrc_runtime::ops::paste_masks::paste_masks_in_image;
use mrc_runtime::FeatureMap;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

#[path = "../tests/common/rng.rs"]
mod rng;

use rng::Rng;

/// Boxes with centres anywhere in an `h×w` image and sides log-uniform in `[lo, hi]`,
/// clipped to the image: the spread of RPN proposals.
fn random_boxes(rng: &mut Rng, n: usize, [h, w]: [usize; 2], lo: f32, hi: f32) -> Vec<[f32; 4]> {
    (0..n)
        .map(|_| {
            let (cx, cy) = (rng.range(0.0, w as f32), rng.range(0.0, h as f32));
            let bw = (rng.range(lo.ln(), hi.ln())).exp();
            let bh = (rng.range(lo.ln(), hi.ln())).exp();
            [
                (cx - bw / 2.0).max(0.0),
                (cy - bh / 2.0).max(0.0),
                (cx + bw / 2.0).min(w as f32),
                (cy + bh / 2.0).min(h as f32),
            ]
        })
        .collect()
}

fn median_time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

struct Data {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Data {
    fn add(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.push((name.to_string(), shape, data));
    }

    fn write(&self, path: &Path) {
        let bytes: Vec<Vec<u8>> =
            self.tensors.iter().map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views: Vec<(String, TensorView)> = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, &None, path).unwrap();
    }
}

fn main() {
    let runs: usize = std::env::var("MRC_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let mut rng = Rng(2024);
    let mut data = Data { tensors: Vec::new() };
    let mut mrc: Vec<(String, f64, String)> = Vec::new();
    // What torchvision must reproduce: NMS keep lists, sums of |RoIAlign| and of pasted masks.
    let mut keeps: HashMap<String, Vec<usize>> = HashMap::new();
    let mut sums: HashMap<&str, f64> = HashMap::new();
    println!("mrc on {} rayon threads, median of {runs} runs", rayon::current_num_threads());

    for n in [4000usize, 20000] {
        let boxes = random_boxes(&mut rng, n, [800, 1088], 16.0, 256.0);
        let scores: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let t = median_time(runs, || {
            nms(&boxes, &scores, 0.7).unwrap();
        });
        let keep = nms(&boxes, &scores, 0.7).unwrap();
        mrc.push((format!("nms{n}"), t, format!("NMS of {n} boxes at 0.7 ({} kept)", keep.len())));
        keeps.insert(format!("nms{n}.keep"), keep);
        data.add(&format!("nms{n}.boxes"), vec![n, 4], boxes.as_flattened().to_vec());
        data.add(&format!("nms{n}.scores"), vec![n], scores);
    }

    let (c, image) = (256usize, [800usize, 1088usize]);
    let levels = [[200usize, 272usize], [100, 136], [50, 68], [25, 34]];
    let feats: Vec<Vec<f32>> = levels.iter().map(|[h, w]| (0..c * h * w).map(|_| rng.range(-1.0, 1.0)).collect()).collect();
    let maps: Vec<FeatureMap> = feats.iter().zip(&levels).map(|(f, [h, w])| FeatureMap::new(f, [1, c, *h, *w]).unwrap()).collect();
    let boxes = random_boxes(&mut rng, 1000, image, 8.0, 700.0);
    let p = MultiScaleParams::new([7, 7], 2);
    let t = median_time(runs, || {
        multiscale_roi_align(&maps, &[&boxes], &[image], &p).unwrap();
    });
    let pooled = multiscale_roi_align(&maps, &[&boxes], &[image], &p).unwrap().values;
    sums.insert("roi_align.sum", pooled.iter().map(|v| v.abs() as f64).sum());
    drop(pooled);
    mrc.push(("roi_align".into(), t, "multi-scale RoIAlign, 1000 boxes x 256 ch, 7x7, FPN of 800x1088".into()));
    for (l, (f, [h, w])) in feats.into_iter().zip(&levels).enumerate() {
        data.add(&format!("roi.feat{l}"), vec![1, c, *h, *w], f);
    }
    data.add("roi.boxes", vec![1000, 4], boxes.as_flattened().to_vec());
    data.add("roi.image_size", vec![2], vec![image[0] as f32, image[1] as f32]);

    let paste_size = [800usize, 1066usize];
    let masks: Vec<f32> = (0..100 * 28 * 28).map(|_| rng.uniform()).collect();
    let boxes = random_boxes(&mut rng, 100, paste_size, 20.0, 600.0);
    let t = median_time(runs, || {
        paste_masks_in_image(&masks, 28, &boxes, paste_size, 1).unwrap();
    });
    let pasted = paste_masks_in_image(&masks, 28, &boxes, paste_size, 1).unwrap();
    sums.insert("paste.sum", pasted.iter().map(|&v| v as f64).sum());
    drop(pasted);
    mrc.push(("paste".into(), t, "paste 100 masks 28x28 into 800x1066".into()));
    data.add("paste.masks", vec![100, 1, 28, 28], masks);
    data.add("paste.boxes", vec![100, 4], boxes.as_flattened().to_vec());
    data.add("paste.image_size", vec![2], vec![paste_size[0] as f32, paste_size[1] as f32]);

    let path = std::env::temp_dir().join(format!("mrc-bench-{}.safetensors", std::process::id()));
    data.write(&path);
    let tv = torchvision_times(&path, runs);
    let _ = std::fs::remove_file(&path);

    println!("{:<10} {:>12} {:>14} {:>8}  what", "case", "mrc (ms)", "torchvision", "ratio");
    for (name, t, what) in &mrc {
        match tv.as_ref().and_then(|m| m.get(name.as_str())).and_then(|v| v.as_f64()) {
            Some(tt) => println!("{name:<10} {:>12.3} {:>14.3} {:>8.3}  {what}", t * 1e3, tt * 1e3, t / tt),
            None => println!("{name:<10} {:>12.3} {:>14} {:>8}  {what}", t * 1e3, "-", "-"),
        }
    }
    if let Some(m) = &tv {
        println!("{}", m["versions"].as_str().unwrap_or(""));
        for (name, keep) in &keeps {
            let same = m.get(name).and_then(|v| serde_json::from_value::<Vec<usize>>(v.clone()).ok()).as_ref() == Some(keep);
            println!("{name}: {}", if same { "identical to torchvision" } else { "DIFFERS from torchvision" });
        }
        for (name, sum) in &sums {
            let theirs = m.get(*name).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            println!("{name}: mrc {sum:.6e}, torchvision {theirs:.6e}, relative difference {:.1e}", (sum - theirs).abs() / theirs.abs());
        }
    }
}

/// Runs `torchvision_ops.py` on the same inputs; `None` (with the reason) when torchvision
/// cannot be run here.
fn torchvision_times(path: &Path, runs: usize) -> Option<HashMap<String, serde_json::Value>> {
    let python = std::env::var("MRC_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torchvision_ops.py");
    let out = match Command::new(&python).arg(&script).arg(path).arg(runs.to_string()).output() {
        Ok(o) => o,
        Err(e) => {
            println!("torchvision comparison skipped: cannot run {python}: {e}");
            return None;
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        println!("torchvision comparison skipped ({python}): {}", err.lines().last().unwrap_or(""));
        return None;
    }
    match serde_json::from_slice(&out.stdout) {
        Ok(m) => Some(m),
        Err(e) => {
            println!("torchvision comparison skipped: unreadable output: {e}");
            None
        }
    }
}
