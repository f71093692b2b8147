//! Data readers on small files written by the tests, and checkpoint error handling.

use std::path::Path;

use elite::compression::*;

fn cifar10_records(count: usize, label_base: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..count {
        bytes.push((label_base + i as u8) % 10);
        bytes.extend((0..3072).map(|p| ((p + i) % 256) as u8));
    }
    bytes
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn reads_a_cifar10_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    for i in 1..=5 {
        write(
            &root.join(format!("data_batch_{i}.bin")),
            &cifar10_records(3, i as u8),
        );
    }
    write(&root.join("test_batch.bin"), &cifar10_records(2, 7));
    // The parent directory is accepted as well.
    let (train, test) = load_cifar10(dir.path()).unwrap();
    assert_eq!(train.len(), 15);
    assert_eq!(test.len(), 2);
    assert_eq!(train.num_classes(), 10);
    assert_eq!(train.class_names()[0], "airplane");
    assert_eq!(&train.labels()[..3], &[1, 2, 3]);
    assert_eq!(test.labels(), &[7, 8]);
    // Pixel 0 of record 0 is 0 -> (0 - mean) / std in the red channel.
    let norm = train.normalization();
    let expected = (0.0 - norm.mean[0]) / norm.std[0];
    assert!((train.image(0).unwrap()[0] - expected).abs() < 1e-6);
    // Green channel of record 1 starts at byte 1024 + 1.
    let expected = (((1024 + 1) % 256) as f32 / 255.0 - norm.mean[1]) / norm.std[1];
    assert!((train.image(1).unwrap()[1024] - expected).abs() < 1e-6);
    let images = train.images_tensor().unwrap();
    assert_eq!(images.dims(), &[15, 3, 32, 32]);
}

#[test]
fn corrupt_or_missing_cifar_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing files.
    assert!(matches!(
        load_cifar10(dir.path()),
        Err(CompressionError::MissingFile(_))
    ));
    // Truncated record.
    let truncated = dir.path().join("truncated.bin");
    let mut bytes = cifar10_records(2, 0);
    bytes.truncate(bytes.len() - 10);
    write(&truncated, &bytes);
    assert!(matches!(
        read_cifar_file(&truncated, CifarLayout::Cifar10),
        Err(CompressionError::CorruptCifar { .. })
    ));
    // Label out of range.
    let bad_label = dir.path().join("bad_label.bin");
    let mut bytes = cifar10_records(1, 0);
    bytes[0] = 12;
    write(&bad_label, &bytes);
    assert!(matches!(
        read_cifar_file(&bad_label, CifarLayout::Cifar10),
        Err(CompressionError::CorruptCifar { .. })
    ));
    // Empty file.
    let empty = dir.path().join("empty.bin");
    write(&empty, &[]);
    assert!(read_cifar_file(&empty, CifarLayout::Cifar10).is_err());
}

#[test]
fn reads_cifar100_with_coarse_and_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    let record = |coarse: u8, fine: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(128u8, 3072));
        r
    };
    let train: Vec<u8> = [record(3, 45), record(19, 99), record(0, 0)].concat();
    let test: Vec<u8> = record(7, 12);
    write(&dir.path().join("train.bin"), &train);
    write(&dir.path().join("test.bin"), &test);
    let (fine_train, fine_test) = load_cifar100(dir.path(), Cifar100Label::Fine).unwrap();
    assert_eq!(fine_train.labels(), &[45, 99, 0]);
    assert_eq!(fine_test.labels(), &[12]);
    assert_eq!(fine_train.num_classes(), 100);
    let (coarse_train, _) = load_cifar100(dir.path(), Cifar100Label::Coarse).unwrap();
    assert_eq!(coarse_train.labels(), &[3, 19, 0]);
    assert_eq!(coarse_train.num_classes(), 20);
    // A fine label of 100 is corrupt.
    write(&dir.path().join("test.bin"), &record(1, 100));
    assert!(matches!(
        load_cifar100(dir.path(), Cifar100Label::Fine),
        Err(CompressionError::CorruptCifar { .. })
    ));
}

#[test]
fn reads_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    for (class, colour) in [("cats", [200u8, 10, 10]), ("dogs", [10u8, 10, 200])] {
        let class_dir = dir.path().join(class);
        std::fs::create_dir(&class_dir).unwrap();
        for i in 0..3 {
            // Different sizes: 32x32 is used as is, others are resized.
            let side = 16 + 16 * i;
            let img = image::RgbImage::from_pixel(side, side, image::Rgb(colour));
            img.save(class_dir.join(format!("img{i}.png"))).unwrap();
        }
        std::fs::write(class_dir.join("notes.txt"), "not an image").unwrap();
    }
    let data = load_image_folder(dir.path(), Normalization::default()).unwrap();
    assert_eq!(data.len(), 6);
    assert_eq!(
        data.class_names(),
        &["cats".to_string(), "dogs".to_string()]
    );
    assert_eq!(data.labels(), &[0, 0, 0, 1, 1, 1]);
    let norm = data.normalization();
    for i in 0..6 {
        let red = data.image(i).unwrap()[0] * norm.std[0] + norm.mean[0];
        let expected = if i < 3 { 200.0 / 255.0 } else { 10.0 / 255.0 };
        assert!((red - expected).abs() < 0.01, "image {i}: {red}");
    }
    // An unreadable image is an error that names the file.
    std::fs::write(dir.path().join("dogs").join("broken.png"), b"not a png").unwrap();
    match load_image_folder(dir.path(), Normalization::default()) {
        Err(CompressionError::Image { path, .. }) => assert!(path.ends_with("broken.png")),
        other => panic!("expected an image error, got {other:?}"),
    }
    assert!(load_image_folder(&dir.path().join("missing"), Normalization::default()).is_err());
}

#[test]
fn checkpoint_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    assert!(matches!(
        Network::load_safetensors(&missing),
        Err(CompressionError::MissingFile(_))
    ));
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    assert!(matches!(
        Network::load_safetensors(&garbage),
        Err(CompressionError::Checkpoint(_))
    ));
    // A VGG checkpoint does not load into a ResNet.
    let vgg = Network::vgg_cifar(&VggConfig::tiny(), 0.125, 10, 0).unwrap();
    let path = dir.path().join("vgg.safetensors");
    vgg.save_safetensors(&path).unwrap();
    let resnet = Network::resnet_cifar(20, 0.25, 10, 0).unwrap();
    assert!(matches!(
        resnet.with_weights_from(&path),
        Err(CompressionError::Checkpoint(_))
    ));
    // ResNet round trip, including option-A shortcuts and PyTorch names.
    let path = dir.path().join("resnet.safetensors");
    resnet.save_safetensors(&path).unwrap();
    let loaded = Network::load_safetensors(&path).unwrap();
    assert_eq!(loaded.topology(), resnet.topology());
    let r18 = Network::resnet18(10, 1.0 / 16.0, ResNetStem::ImageNet, 0).unwrap();
    let path = dir.path().join("r18.safetensors");
    r18.save_safetensors(&path).unwrap();
    let loaded = r18.with_weights_from(&path).unwrap();
    assert_eq!(loaded.named_tensors().len(), r18.named_tensors().len());
}

#[test]
fn the_authors_normalisation_is_applied_on_request() {
    use elite::compression::sources::DataSource;
    let plain: DataSource = "synthetic:2".parse().unwrap();
    let nm: DataSource = "nm:synthetic:2".parse().unwrap();
    assert_eq!(nm.label(), "synthetic");
    let (a, _) = plain.load().unwrap();
    let (b, _) = nm.load().unwrap();
    assert_eq!(b.normalization(), Normalization::NEURON_MERGING_CIFAR);
    // A pixel value v (in [0, 1]) is (v - mean) / std under each normalisation.
    let (na, nb) = (a.normalization(), b.normalization());
    for (i, (&x, &y)) in a
        .image(0)
        .unwrap()
        .iter()
        .zip(b.image(0).unwrap())
        .enumerate()
    {
        let c = i / 1024;
        let v = x * na.std[c] + na.mean[c];
        assert!((y - (v - nb.mean[c]) / nb.std[c]).abs() < 1e-4);
    }
    assert!(
        "nm:digits:64"
            .parse::<DataSource>()
            .unwrap()
            .load()
            .is_err()
    );
}
