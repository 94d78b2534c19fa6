// SCRATCH: throw-away timing, delete before commit.
use std::time::Instant;
use xent::cpu::fast::fused_rows;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args.get(1).map_or(4096, |s| s.parse().unwrap());
    let classes: usize = args.get(2).map_or(32000, |s| s.parse().unwrap());
    let reps: usize = args.get(3).map_or(7, |s| s.parse().unwrap());
    let n = rows * classes;
    let mut state = 0x12345678u32;
    let logits: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 8.0 - 4.0
        })
        .collect();
    let targets: Vec<u32> = (0..rows).map(|r| (r * 7919 % classes) as u32).collect();
    let mut losses = vec![0f32; rows];
    let mut grad = vec![0f32; n];
    let mut t_fused = vec![];
    let mut t_loss = vec![];
    let mut t_copy = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        fused_rows(
            &logits,
            &targets,
            classes,
            Some((&mut grad, 1.0 / rows as f32)),
            &mut losses,
        );
        t_fused.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        fused_rows(&logits, &targets, classes, None, &mut losses);
        t_loss.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        grad.copy_from_slice(&logits);
        t_copy.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{rows}x{classes}: fused loss+grad median {:.1} ms {:?}",
        median(t_fused.clone()),
        t_fused.iter().map(|x| *x as i64).collect::<Vec<_>>()
    );
    println!(
        "loss-only median {:.1} ms {:?}",
        median(t_loss.clone()),
        t_loss.iter().map(|x| *x as i64).collect::<Vec<_>>()
    );
    println!("memcpy (1 thread) median {:.1} ms", median(t_copy));
    println!("{}", losses[0]);
}
